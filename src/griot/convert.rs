//! Rows <-> protobuf messages.

use serde_json::Value;

use super::{
    domain::{JobOptions, redact_url},
    queries::{JobRow, LogRow, NodePackageRow, PackageRow, TrustRow},
};
use crate::proto::{quintet::griot::v1 as pb, timestamp};

pub fn package(row: PackageRow) -> pb::Package {
    let manifest = &row.manifest.0;
    let text = |field: &str| {
        manifest
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    pb::Package {
        name: text("name"),
        node_class: text("node_class"),
        version: text("version"),
        description: text("description"),
        dependencies: manifest
            .get("dependencies")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        manifest_json: manifest.to_string(),
        package_id: row.package_id,
        artifact_url: redact_url(&row.artifact_url),
        author_did: row.author_did,
        signature: row.signature,
        create_time: Some(timestamp(row.created_at)),
        artifact_size: row.artifact_size.unwrap_or(0),
    }
}

pub fn status(text: &str) -> pb::InstallationStatus {
    match text {
        "pending" => pb::InstallationStatus::Pending,
        "running" => pb::InstallationStatus::Running,
        "completed" => pb::InstallationStatus::Completed,
        "failed" => pb::InstallationStatus::Failed,
        "cancelled" => pb::InstallationStatus::Cancelled,
        _ => pb::InstallationStatus::Unspecified,
    }
}

/// A status filter as stored; `None` for any.
pub fn status_filter(status: pb::InstallationStatus) -> Option<&'static str> {
    match status {
        pb::InstallationStatus::Unspecified => None,
        pb::InstallationStatus::Pending => Some("pending"),
        pb::InstallationStatus::Running => Some("running"),
        pb::InstallationStatus::Completed => Some("completed"),
        pb::InstallationStatus::Failed => Some("failed"),
        pb::InstallationStatus::Cancelled => Some("cancelled"),
    }
}

pub fn options(options: &JobOptions) -> pb::InstallationOptions {
    pb::InstallationOptions {
        timeout_seconds: options.timeout_seconds,
        max_retries: options.max_retries,
        rollback_on_failure: options.rollback_on_failure,
        allow_downgrade: options.allow_downgrade,
    }
}

pub fn job_options(options: Option<pb::InstallationOptions>) -> JobOptions {
    let options = options.unwrap_or_default();
    JobOptions {
        timeout_seconds: options.timeout_seconds,
        max_retries: options.max_retries,
        rollback_on_failure: options.rollback_on_failure,
        allow_downgrade: options.allow_downgrade,
    }
}

pub fn installation(row: JobRow, logs: Vec<String>) -> pb::Installation {
    let stored: JobOptions = serde_json::from_value(row.options.0).unwrap_or_default();
    pb::Installation {
        job_id: row.job_id.to_string(),
        package_id: row.package_id,
        target_node_id: row.target_node_id,
        status: status(&row.status) as i32,
        status_message: row.status_message.unwrap_or_default(),
        create_time: Some(timestamp(row.created_at)),
        start_time: row.started_at.map(timestamp),
        complete_time: row.completed_at.map(timestamp),
        options: Some(options(&stored)),
        idempotency_key: row.idempotency_key.unwrap_or_default(),
        attempts: row.attempts,
        log_line_count: row.log_count,
        cancel_requested: row.cancel_requested,
        logs,
    }
}

pub fn log_line(row: LogRow) -> pb::LogLine {
    pb::LogLine {
        seq: row.seq,
        time: Some(timestamp(row.logged_at)),
        level: match row.level.as_str() {
            "info" => pb::LogLevel::Info,
            "warn" => pb::LogLevel::Warn,
            "error" => pb::LogLevel::Error,
            _ => pb::LogLevel::Unspecified,
        } as i32,
        message: row.message,
    }
}

pub fn trust(row: TrustRow) -> pb::AuthorTrust {
    pb::AuthorTrust {
        author_did: row.author_did,
        trust: match row.trust.as_str() {
            "trusted" => pb::Trust::Trusted,
            "revoked" => pb::Trust::Revoked,
            _ => pb::Trust::Unspecified,
        } as i32,
        note: row.note,
        update_time: Some(timestamp(row.updated_at)),
    }
}

pub fn node_package(row: NodePackageRow) -> pb::NodePackage {
    pb::NodePackage {
        package_id: row.package_id,
        name: row.name,
        node_class: row.node_class,
        version: row.version,
        job_id: row.job_id.to_string(),
        install_time: Some(timestamp(row.installed_at)),
    }
}
