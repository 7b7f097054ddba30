//! The one error type of quintet and its one mapping to `tonic::Status`.
//!
//! Handlers and queries return [`Error`]; the conversion into a status happens in exactly one
//! place ([`From<Error> for Status`]), which attaches rich details (`BadRequest`, `ErrorInfo`,
//! `ResourceInfo`, `PreconditionFailure`) so clients can act on errors without parsing messages.
//! PostgreSQL errors are classified by SQLSTATE in [`From<sqlx::Error>`]. An internal error never
//! reaches the client with its cause: the cause chain is logged under an incident id and only the
//! id is returned.

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
                details.add_bad_request_violation(field.clone(), description.clone());
                metadata.insert("field".to_owned(), field.clone());
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
                details.set_resource_info(*resource_type, name.clone(), "", error.to_string());
                error.to_string()
            }
            Error::FailedPrecondition {
                kind,
                subject,
                description,
            } => {
                details.add_precondition_failure_violation(*kind, subject.clone(), description);
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
        Status::with_error_details(code, message, details)
    }
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
        c if c.starts_with(sqlstate::DATA_EXCEPTION_CLASS) => {
            Error::invalid_argument(column.unwrap_or_else(|| "request".to_owned()), db.message())
        }
        _ => return None,
    })
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
}
