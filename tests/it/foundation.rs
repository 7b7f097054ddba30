//! The standard gRPC surface every client relies on: health, reflection, the admin service and
//! its authorization, rich error details, compression, message limits, graceful drain.

use std::time::Duration;

use quintet::proto::quintet::admin::v1::{
    DatabaseMode, GetServerInfoRequest, admin_service_client::AdminServiceClient,
};
use tokio_stream::StreamExt;
use tonic::{Code, codec::CompressionEncoding};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use tonic_types::StatusExt;

use crate::harness::{TestServer, authed};

const ADMIN: &str = "quintet.admin.v1.AdminService";

async fn check(server: &TestServer, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn health_reports_every_service_serving() {
    let server = TestServer::start().await;
    for service in ["", ADMIN, "grpc.reflection.v1.ServerReflection"] {
        assert_eq!(
            check(&server, service).await.unwrap(),
            ServingStatus::Serving,
            "{service}"
        );
    }
    let unknown = check(&server, "no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// One v1 reflection request and its answer.
async fn reflect(server: &TestServer, request: MessageRequest) -> MessageResponse {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    ServerReflectionClient::new(server.channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .expect("a reflection answer")
        .unwrap()
        .message_response
        .expect("a reflection message")
}

async fn reflection_services(server: &TestServer) -> Vec<String> {
    match reflect(server, MessageRequest::ListServices(String::new())).await {
        MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_and_describes_every_service() {
    let server = TestServer::start().await;
    let services = reflection_services(&server).await;
    for expected in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        ADMIN,
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }

    // The descriptor of our own service comes with its comments, for `grpcurl describe`.
    let answer = reflect(
        &server,
        MessageRequest::FileContainingSymbol(ADMIN.to_owned()),
    )
    .await;
    let MessageResponse::FileDescriptorResponse(files) = answer else {
        panic!("no descriptor for {ADMIN}");
    };
    use prost::Message;
    let described = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .find(|file| file.package() == "quintet.admin.v1")
        .expect("the admin proto file");
    assert_eq!(described.service[0].name(), "AdminService");
    assert!(described.source_code_info.is_some(), "comments are served");
}

#[tokio::test]
async fn v1alpha_reflection_answers_too() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest as Request, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(server.channel.clone());
    let request = Request {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let response = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("no service list");
    };
    assert!(list.service.iter().any(|s| s.name == ADMIN));
}

#[tokio::test]
async fn server_info_needs_the_admin_token() {
    let server = TestServer::start().await;
    let mut client = AdminServiceClient::new(server.channel.clone());

    let missing = client
        .get_server_info(GetServerInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let info = missing.get_error_details().error_info().cloned().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("UNAUTHENTICATED", "quintet")
    );

    let garbage = client
        .get_server_info(authed(GetServerInfoRequest {}, "qadm_not-a-real-token"))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::Unauthenticated);

    let mut basic = tonic::Request::new(GetServerInfoRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic YWRtaW46YWRtaW4=".parse().unwrap());
    assert_eq!(
        client.get_server_info(basic).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let info = client
        .get_server_info(authed(GetServerInfoRequest {}, server.admin_token.expose()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    let database = info.database.unwrap();
    assert_eq!(database.mode(), DatabaseMode::External);
    assert_eq!(
        database.migrations_applied as usize,
        quintet::db::MIGRATOR.iter().count()
    );
    assert_eq!(
        database.schema_version,
        quintet::db::MIGRATOR
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap()
    );
    assert!(
        database
            .server_version
            .chars()
            .next()
            .unwrap()
            .is_ascii_digit()
    );
    assert!(uuid::Uuid::parse_str(&database.installation_id).is_ok());
    assert!(info.services.iter().any(|s| s.name == ADMIN && s.serving));
    assert!(info.started_at.is_some());
}

#[tokio::test]
async fn a_generated_admin_token_works_on_every_replica() {
    // Neither replica is configured with a token: each generates its own on first start.
    let first = TestServer::start_with(|c| c.admin_token = None).await;
    let second = first.replica(|c| c.admin_token = None).await;
    assert_ne!(first.admin_token, second.admin_token);
    let mode = std::fs::metadata(first.data_dir.path().join("admin-token")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    for server in [&first, &second] {
        for token in [&first.admin_token, &second.admin_token] {
            AdminServiceClient::new(server.channel.clone())
                .get_server_info(authed(GetServerInfoRequest {}, token.expose()))
                .await
                .expect("each replica accepts each replica's admin token");
        }
    }
}

#[tokio::test]
async fn gzip_is_accepted_and_offered() {
    let server = TestServer::start().await;
    let mut client = AdminServiceClient::new(server.channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let response = client
        .get_server_info(authed(GetServerInfoRequest {}, server.admin_token.expose()))
        .await
        .unwrap();
    assert_eq!(
        response
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
}

#[tokio::test]
async fn oversize_messages_are_refused_cleanly() {
    let server = TestServer::start_with(|c| c.max_message_bytes = 1024).await;
    let error = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest {
            service: "x".repeat(4096),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{error:?}"
    );
    // The server is fine afterwards.
    assert_eq!(check(&server, "").await.unwrap(), ServingStatus::Serving);
}

#[tokio::test]
async fn draining_turns_health_not_serving_then_refuses_connections() {
    let mut server = TestServer::start().await;
    let mut watch = HealthClient::new(server.channel.clone())
        .watch(HealthCheckRequest {
            service: ADMIN.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let addr = server.addr;
    let drained = tokio::spawn(async move {
        server.shutdown().await;
        server
    });
    let update = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("a health update while draining");
    match update {
        Some(Ok(update)) => assert_eq!(update.status(), ServingStatus::NotServing),
        other => panic!("expected NOT_SERVING, got {other:?}"),
    }
    drop(watch);
    let _server = drained.await.unwrap();
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the listener is closed after the drain");
}

#[tokio::test]
async fn unknown_methods_are_unimplemented_not_internal() {
    let server = TestServer::start().await;
    let mut client = tonic::client::Grpc::new(server.channel.clone());
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/quintet.nothing.v1.Nothing/Do");
    let error = client
        .unary::<(), (), _>(
            tonic::Request::new(()),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unimplemented);
}

#[tokio::test]
async fn the_concurrency_limit_queues_and_grpc_timeout_bounds_the_wait() {
    use quintet::proto::quintet::registry::v1::{
        self as pb, registry_service_client::RegistryServiceClient,
    };
    let server = TestServer::start_with(|c| c.concurrency_limit = 1).await;
    // A client-streaming call holds the only slot while its stream stays open.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::PublishPackageRequest>(1);
    let mut holder = RegistryServiceClient::new(server.channel.clone());
    let token = server.admin_token.expose().to_owned();
    let held = tokio::spawn(async move {
        holder
            .publish_package(authed(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &token,
            ))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut waiting = tonic::Request::new(HealthCheckRequest::default());
    waiting.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let error = HealthClient::new(server.channel.clone())
        .check(waiting)
        .await
        .unwrap_err();
    assert!(
        matches!(error.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the client's grpc-timeout was honoured"
    );

    // Once the slot is free, calls go through again.
    drop(tx);
    let _ = held.await;
    assert_eq!(check(&server, "").await.unwrap(), ServingStatus::Serving);
}

#[tokio::test]
async fn a_flooding_token_is_rate_limited_without_hurting_others() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_per_sec = 2;
        c.rate_limit_burst = 5;
        c.anonymous_rate_limit_per_sec = 3;
    })
    .await;
    let admin = server.admin_token.expose().to_owned();
    let mut client = AdminServiceClient::new(server.channel.clone());
    let mut codes = Vec::new();
    for _ in 0..8 {
        let answer = client
            .get_server_info(authed(GetServerInfoRequest {}, &admin))
            .await;
        codes.push(answer.map(|_| Code::Ok).unwrap_or_else(|s| s.code()));
    }
    // The burst of five passes; the rest are turned away at once.
    assert_eq!(&codes[..5], &[Code::Ok; 5]);
    assert!(
        codes[5..].iter().all(|c| *c == Code::ResourceExhausted),
        "{codes:?}"
    );
    let status = client
        .get_server_info(authed(GetServerInfoRequest {}, &admin))
        .await
        .unwrap_err();
    assert_eq!(crate::harness::reason_of(&status), "RATE_LIMITED");
    let retry = status.get_error_details().retry_info().unwrap().retry_delay;
    assert!(retry.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(1)));

    // Another caller has a bucket of its own: here a wrong token, refused on its merits.
    let other = client
        .get_server_info(authed(GetServerInfoRequest {}, "someone-else"))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::Unauthenticated);

    // Calls without a token share their address's bucket (a burst of twice the rate); health
    // checks are never limited.
    let mut anonymous = Vec::new();
    for _ in 0..8 {
        anonymous.push(
            client
                .get_server_info(GetServerInfoRequest {})
                .await
                .unwrap_err()
                .code(),
        );
    }
    assert_eq!(&anonymous[..6], &[Code::Unauthenticated; 6]);
    assert_eq!(&anonymous[6..], &[Code::ResourceExhausted; 2]);
    for _ in 0..20 {
        assert_eq!(check(&server, "").await.unwrap(), ServingStatus::Serving);
    }

    // The limited token comes back once its bucket refills.
    tokio::time::sleep(Duration::from_millis(600)).await;
    client
        .get_server_info(authed(GetServerInfoRequest {}, &admin))
        .await
        .unwrap();
}

#[tokio::test]
async fn reflection_describes_the_error_detail_types() {
    let server = TestServer::start().await;
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
    ] {
        let MessageResponse::FileDescriptorResponse(found) = reflect(
            &server,
            MessageRequest::FileContainingSymbol(symbol.to_owned()),
        )
        .await
        else {
            panic!("{symbol} is not described");
        };
        assert!(!found.file_descriptor_proto.is_empty(), "{symbol}");
    }
}
