//! The one error type of quintet and its one mapping to `tonic::Status`.
//!
//! Handlers and queries return [`Error`]; the conversion into a status happens in exactly one
//! place ([`From<Error> for Status`]), which attaches rich details (`BadRequest`, `ErrorInfo`,
//! `ResourceInfo`, `PreconditionFailure`) so clients can act on errors without parsing messages.
//! PostgreSQL errors are classified by SQLSTATE in [`From<sqlx::Error>`]. An internal error never
//! reaches the client with its cause: the cause chain is logged under an incident id and only the
//! id is returned; nor does the database's own wording. Texts are clipped to fit in the headers a
//! client accepts. [`UndecodableRequestLayer`] gives requests that do not decode (which tonic
//! answers INTERNAL) the INVALID_ARGUMENT naming their field that any other bad request gets.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error quintet returns.
pub const ERROR_DOMAIN: &str = "quintet";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed. `field` is its path in the request (`manifest.name`).
    #[error("{field}: {description}")]
    InvalidArgument {
        field: String,
        description: String,
        /// A stable machine-readable reason; `INVALID_ARGUMENT` unless a service has a better one.
        reason: &'static str,
    },
    #[error("{resource_type} {name:?} not found")]
    NotFound {
        resource_type: &'static str,
        name: String,
    },
    #[error("{resource_type} {name:?} already exists")]
    AlreadyExists {
        resource_type: &'static str,
        name: String,
    },
    /// The system is not in the state the request needs (`kind` names the violated condition).
    #[error("{description}")]
    FailedPrecondition {
        kind: &'static str,
        subject: String,
        description: String,
    },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A concurrent change won; the client may retry.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    DataLoss(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Cancelled(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    pub fn invalid_argument(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            description: description.into(),
            reason: "INVALID_ARGUMENT",
        }
    }

    /// An invalid argument with a service-specific stable reason (e.g. `SIGNATURE_FAILED`).
    pub fn invalid_argument_because(
        reason: &'static str,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            description: description.into(),
            reason,
        }
    }

    pub fn not_found(resource_type: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            resource_type,
            name: name.into(),
        }
    }

    pub fn already_exists(resource_type: &'static str, name: impl Into<String>) -> Self {
        Error::AlreadyExists {
            resource_type,
            name: name.into(),
        }
    }

    pub fn failed_precondition(
        kind: &'static str,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Error::FailedPrecondition {
            kind,
            subject: subject.into(),
            description: description.into(),
        }
    }

    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Error::Internal(cause.into())
    }

    /// The same error with its field (if it names one) inside `prefix`: a check written for one
    /// message (`collection`) applied to a part of a bigger one (`writes[2].create.collection`).
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Error::InvalidArgument {
                field,
                description,
                reason,
            } => Error::InvalidArgument {
                field: format!("{prefix}.{field}"),
                description,
                reason,
            },
            other => other,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Aborted(_) => Code::Aborted,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// The stable `ErrorInfo.reason` clients may match on.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument { reason, .. } => reason,
            Error::NotFound { .. } => "NOT_FOUND",
            Error::AlreadyExists { .. } => "ALREADY_EXISTS",
            Error::FailedPrecondition { kind, .. } => kind,
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::ResourceExhausted(_) => "RESOURCE_EXHAUSTED",
            Error::Aborted(_) => "ABORTED",
            Error::DataLoss(_) => "DATA_LOSS",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::Cancelled(_) => "CANCELLED",
            Error::Internal(_) => "INTERNAL",
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let code = error.code();
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        let message = match &error {
            Error::InvalidArgument {
                field, description, ..
            } => {
                details.add_bad_request_violation(clipped(field), clipped(description));
                metadata.insert("field".to_owned(), clipped(field));
                error.to_string()
            }
            Error::NotFound {
                resource_type,
                name,
            }
            | Error::AlreadyExists {
                resource_type,
                name,
            } => {
                details.set_resource_info(
                    *resource_type,
                    clipped(name),
                    "",
                    clipped(&error.to_string()),
                );
                error.to_string()
            }
            Error::FailedPrecondition {
                kind,
                subject,
                description,
            } => {
                details.add_precondition_failure_violation(
                    *kind,
                    clipped(subject),
                    clipped(description),
                );
                error.to_string()
            }
            Error::Internal(cause) => {
                let incident = uuid::Uuid::new_v4();
                tracing::error!(%incident, error = format!("{cause:#}"), "internal error");
                metadata.insert("incident".to_owned(), incident.to_string());
                format!("internal error (incident {incident})")
            }
            other => other.to_string(),
        };
        details.set_error_info(error.reason(), ERROR_DOMAIN, metadata);
        Status::with_error_details(code, clipped(&message), details)
    }
}

/// A status travels in HTTP/2 headers, whose size clients limit (8 or 16 KiB is common; beyond
/// it the call fails with a protocol error instead of the answer). Errors quote what the client
/// sent, which may be huge: each text is clipped to this many bytes.
const MAX_STATUS_TEXT_BYTES: usize = 512;

fn clipped(text: &str) -> String {
    if text.len() <= MAX_STATUS_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_STATUS_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// SQLSTATE classes and codes this module maps; see PostgreSQL's "Appendix A. Error Codes".
mod sqlstate {
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const EXCLUSION_VIOLATION: &str = "23P01";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const QUERY_CANCELED: &str = "57014";
    /// Class 08: connection exception.
    pub const CONNECTION_CLASS: &str = "08";
    /// Class 53: insufficient resources (disk full, out of memory, too many connections).
    pub const INSUFFICIENT_RESOURCES_CLASS: &str = "53";
    /// Class 57P: operator intervention (admin shutdown, crash shutdown, cannot connect now).
    pub const OPERATOR_INTERVENTION_CLASS: &str = "57P";
    /// Class 22: data exception (value out of range, invalid text representation...).
    pub const DATA_EXCEPTION_CLASS: &str = "22";
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    pub const UNTRANSLATABLE_CHARACTER: &str = "22P05";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const STRING_DATA_RIGHT_TRUNCATION: &str = "22001";
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    /// Class 54: program limit exceeded (a value too large for the database to index or store).
    pub const PROGRAM_LIMIT_CLASS: &str = "54";
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::RowNotFound => Error::not_found("row", ""),
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Error::Unavailable(format!("database unavailable: {error}"))
            }
            sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => {
                Error::Unavailable("database unavailable".to_owned())
            }
            sqlx::Error::Database(db) => classify_database_error(db.as_ref())
                .unwrap_or_else(|| Error::Internal(error.into())),
            _ => Error::Internal(error.into()),
        }
    }
}

fn classify_database_error(db: &dyn sqlx::error::DatabaseError) -> Option<Error> {
    let code = db.code()?;
    let constraint = db.constraint().unwrap_or("constraint").to_owned();
    let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
    let column = pg.and_then(|e| e.column()).map(str::to_owned);
    Some(match code.as_ref() {
        sqlstate::UNIQUE_VIOLATION | sqlstate::EXCLUSION_VIOLATION => {
            Error::already_exists("resource", constraint)
        }
        sqlstate::FOREIGN_KEY_VIOLATION => {
            // PostgreSQL words the two directions differently: a row that points at a missing one
            // ("insert or update on table ...") versus a row still pointed at ("update or delete").
            if db.message().starts_with("update or delete") {
                Error::failed_precondition(
                    "STILL_REFERENCED",
                    constraint,
                    "the resource is still referenced by others",
                )
            } else {
                Error::not_found("referenced resource", constraint)
            }
        }
        sqlstate::CHECK_VIOLATION => Error::invalid_argument(constraint, "value out of range"),
        sqlstate::NOT_NULL_VIOLATION => {
            Error::invalid_argument(column.unwrap_or(constraint), "is required")
        }
        sqlstate::SERIALIZATION_FAILURE | sqlstate::DEADLOCK_DETECTED => {
            Error::Aborted("a concurrent change conflicted; retry".to_owned())
        }
        sqlstate::LOCK_NOT_AVAILABLE => {
            Error::Aborted("the resource is locked by another request; retry".to_owned())
        }
        sqlstate::QUERY_CANCELED => Error::Cancelled("the query was cancelled".to_owned()),
        c if c.starts_with(sqlstate::CONNECTION_CLASS)
            || c.starts_with(sqlstate::OPERATOR_INTERVENTION_CLASS) =>
        {
            Error::Unavailable("database unavailable".to_owned())
        }
        c if c.starts_with(sqlstate::INSUFFICIENT_RESOURCES_CLASS) => {
            Error::Unavailable("database out of resources".to_owned())
        }
        c if c.starts_with(sqlstate::PROGRAM_LIMIT_CLASS) => {
            Error::invalid_argument("request", "too large for the database to store")
        }
        c if c.starts_with(sqlstate::DATA_EXCEPTION_CLASS) => Error::invalid_argument(
            column.unwrap_or_else(|| "request".to_owned()),
            data_exception(c),
        ),
        _ => return None,
    })
}

/// What is wrong with a value PostgreSQL refused (class 22), in the client's terms: the
/// database's own message names its types and encodings, which are no business of clients.
fn data_exception(code: &str) -> &'static str {
    match code {
        sqlstate::CHARACTER_NOT_IN_REPERTOIRE | sqlstate::UNTRANSLATABLE_CHARACTER => {
            "contains a character that cannot be stored (such as NUL)"
        }
        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE => "a number out of range",
        sqlstate::STRING_DATA_RIGHT_TRUNCATION => "too long",
        sqlstate::DATETIME_FIELD_OVERFLOW => "a date or time out of range",
        _ => "not a valid value",
    }
}

/// tonic answers a request message that does not decode with INTERNAL ("failed to decode
/// Protobuf message: ..."), as gRPC's code table has it for a server that cannot parse a request.
/// For quintet, bytes that are not the message are the client's mistake like any other bad
/// request: this layer, on every service (health and reflection too), turns those answers into
/// INVALID_ARGUMENT naming the field that failed to decode, with the usual rich details. They are
/// always trailers-only answers (the status in the response headers): a request decodes before its
/// handler answers, and a client-streaming handler answers with the decode error of its stream.
#[derive(Clone, Copy, Debug, Default)]
pub struct UndecodableRequestLayer;

impl<S> tower::Layer<S> for UndecodableRequestLayer {
    type Service = UndecodableRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UndecodableRequest { inner }
    }
}

#[derive(Clone, Debug)]
pub struct UndecodableRequest<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for UndecodableRequest<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            if let Some(status) = undecodable_request(response.headers()) {
                let headers = response.headers_mut();
                headers.remove("grpc-message");
                headers.remove("grpc-status-details-bin");
                if status.add_header(headers).is_err() {
                    // Not expected: the new status is plain text. Keep the answer an error.
                    headers.insert("grpc-status", http::HeaderValue::from_static("3"));
                }
            }
            Ok(response)
        })
    }
}

/// The INVALID_ARGUMENT for an answer that is tonic's INTERNAL for an undecodable request.
fn undecodable_request(headers: &http::HeaderMap) -> Option<Status> {
    if headers.get("grpc-status")?.as_bytes() != b"13" {
        return None;
    }
    undecodable(&Status::from_header_map(headers)?).map(Status::from)
}

impl Error {
    /// The error item that ended a client's request stream: a message that does not decode is
    /// the client's bad request (INVALID_ARGUMENT naming the field); anything else broke the
    /// stream off (the client went away): CANCELLED.
    pub fn from_request_stream(status: &Status) -> Self {
        undecodable(status).unwrap_or_else(|| {
            Error::Cancelled(format!("upload interrupted: {}", status.message()))
        })
    }
}

/// The INVALID_ARGUMENT for tonic's INTERNAL status of a request message that does not decode.
fn undecodable(status: &Status) -> Option<Error> {
    if status.code() != Code::Internal {
        return None;
    }
    let decode_error = status
        .message()
        .strip_prefix("failed to decode Protobuf message: ")?;
    let (field, description) = undecodable_field(decode_error);
    Some(Error::invalid_argument(
        field,
        format!("does not decode: {description}"),
    ))
}

/// prost names the path to the failing field innermost first (`Inner.field: Outer.field: why`);
/// a client knows it outermost first (`field.field`). `request` when no field is named.
fn undecodable_field(text: &str) -> (String, &str) {
    let identifier =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut path = Vec::new();
    let mut rest = text;
    while let Some((segment, after)) = rest.split_once(": ")
        && let Some((message, field)) = segment.split_once('.')
        && identifier(message)
        && identifier(field)
    {
        path.push(field);
        rest = after;
    }
    path.reverse();
    let field = if path.is_empty() {
        "request".to_owned()
    } else {
        path.join(".")
    };
    (field, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_its_field_in_message_and_details() {
        let status = Status::from(Error::invalid_argument(
            "manifest.name",
            "must be lowercase",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "manifest.name: must be lowercase");
        let details = status.get_error_details();
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert_eq!(violation.field, "manifest.name");
        assert_eq!(details.error_info().unwrap().reason, "INVALID_ARGUMENT");
        assert_eq!(details.error_info().unwrap().domain, ERROR_DOMAIN);
    }

    #[test]
    fn service_specific_reason_survives() {
        let status = Status::from(Error::invalid_argument_because(
            "SIGNATURE_FAILED",
            "signature",
            "does not verify",
        ));
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "SIGNATURE_FAILED"
        );
    }

    #[test]
    fn internal_hides_its_cause() {
        let cause = anyhow::anyhow!("SELECT secret FROM users WHERE password = 'hunter2'");
        let status = Status::from(Error::internal(cause));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("SELECT"));
        assert!(!status.message().contains("hunter2"));
        assert!(status.message().starts_with("internal error (incident "));
    }

    #[test]
    fn pool_timeout_is_unavailable() {
        let error = Error::from(sqlx::Error::PoolTimedOut);
        assert_eq!(error.code(), Code::Unavailable);
    }

    #[test]
    fn not_found_carries_resource_info() {
        let status = Status::from(Error::not_found("package", "left-pad"));
        let details = status.get_error_details();
        let info = details.resource_info().unwrap();
        assert_eq!(info.resource_type, "package");
        assert_eq!(info.resource_name, "left-pad");
    }

    #[test]
    fn an_undecodable_request_is_invalid_argument_naming_its_field() {
        let mut headers = http::HeaderMap::new();
        Status::internal(
            "failed to decode Protobuf message: ManifestHeader.class_id: \
             PutObjectRequest.manifest: invalid string value: data is not UTF-8 encoded",
        )
        .add_header(&mut headers)
        .unwrap();
        let status = undecodable_request(&headers).expect("rewritten");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "manifest.class_id: does not decode: invalid string value: data is not UTF-8 encoded"
        );
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "manifest.class_id"
        );

        let mut headers = http::HeaderMap::new();
        Status::internal("failed to decode Protobuf message: invalid wire type value: 6")
            .add_header(&mut headers)
            .unwrap();
        let status = undecodable_request(&headers).unwrap();
        assert_eq!(
            status.message(),
            "request: does not decode: invalid wire type value: 6"
        );

        // Other INTERNAL answers are left alone, and so is everything that is not INTERNAL.
        for status in [
            Status::from(Error::internal(anyhow::anyhow!("disk on fire"))),
            Status::invalid_argument("failed to decode Protobuf message: x"),
        ] {
            let mut headers = http::HeaderMap::new();
            status.add_header(&mut headers).unwrap();
            assert!(undecodable_request(&headers).is_none(), "{status:?}");
        }
    }

    #[test]
    fn a_huge_quoted_request_still_fits_in_the_headers() {
        // Percent-encoding triples `[`; the details repeat the text: unclipped, this status
        // would need about 30 KiB of headers.
        let huge = "[".repeat(5000);
        for error in [
            Error::invalid_argument("cid", format!("{huge:?} is not a CID")),
            Error::not_found("blob", huge.clone()),
            Error::failed_precondition("KIND", huge.clone(), huge.clone()),
            Error::invalid_argument(huge.clone(), "é".repeat(5000)),
        ] {
            let status = Status::from(error);
            let mut headers = http::HeaderMap::new();
            status.add_header(&mut headers).unwrap();
            let size: usize = headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len())
                .sum();
            assert!(size < 8 * 1024, "{size} bytes of headers");
            assert!(status.message().ends_with('…'), "{}", status.message());
        }
        let status = Status::from(Error::invalid_argument("cid", "short"));
        assert_eq!(status.message(), "cid: short");
    }

    #[test]
    fn a_request_stream_ends_in_bad_input_or_a_broken_stream() {
        let undecodable = Status::internal(
            "failed to decode Protobuf message: UploadDatasetRequest.chunk: buffer underflow",
        );
        let error = Error::from_request_stream(&undecodable);
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(
            error.to_string(),
            "chunk: does not decode: buffer underflow"
        );
        let gone = Status::cancelled("h2 protocol error: stream reset");
        assert_eq!(Error::from_request_stream(&gone).code(), Code::Cancelled);
    }
}
