//! Rows to protobuf messages.

use serde_json::Value;

use super::{
    domain::Scope,
    queries::{ApiTokenRow, EventRow, PackageRow, UserRow, VersionRow},
};
use crate::{
    blobs::Sha256,
    proto::{quintet::registry::v1 as pb, timestamp},
};

pub fn user(row: &UserRow) -> pb::User {
    pb::User {
        id: row.uuid.to_string(),
        username: row.username.clone(),
        avatar_url: row.avatar.clone(),
        create_time: Some(timestamp(row.created_at)),
    }
}

fn text(data: &Value, key: &str) -> String {
    data.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

pub fn package(row: &PackageRow) -> pb::Package {
    let data = &row.data.0;
    pb::Package {
        id: row.pointer.to_string(),
        name: row.name.clone(),
        names: row.names.clone(),
        description: text(data, "description"),
        keywords: data
            .get("keywords")
            .and_then(Value::as_array)
            .map(|k| {
                k.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        repository: text(data, "repository"),
        r#type: if row.package_type == "theme" {
            pb::PackageType::Theme
        } else {
            pb::PackageType::Package
        }
        .into(),
        latest_version: row.latest_version.clone().unwrap_or_default(),
        downloads: row.downloads,
        stargazers_count: row.stargazers_count,
        create_time: Some(timestamp(row.created)),
        update_time: Some(timestamp(row.updated)),
        readme: String::new(),
        owners: Vec::new(),
        versions: Vec::new(),
    }
}

pub fn version(row: &VersionRow) -> pb::Version {
    pb::Version {
        package_name: row.package_name.clone(),
        version: row.semver.clone(),
        status: row.status.clone(),
        engines_json: row.engine.0.to_string(),
        license: row.license.clone(),
        manifest_json: row.meta.0.to_string(),
        tarball_sha256: Sha256::from_slice(&row.tarball_sha256)
            .map(|sha| sha.to_hex())
            .unwrap_or_default(),
        tarball_size: row.tarball_size,
        downloads: row.downloads,
        yanked: row.yanked,
        deleted: row.deleted_at.is_some(),
        create_time: Some(timestamp(row.created)),
    }
}

pub fn scope_from_pb(scope: pb::TokenScope) -> Option<Scope> {
    Some(match scope {
        pb::TokenScope::PublishNew => Scope::PublishNew,
        pb::TokenScope::PublishUpdate => Scope::PublishUpdate,
        pb::TokenScope::Yank => Scope::Yank,
        pb::TokenScope::Star => Scope::Star,
        pb::TokenScope::Unspecified => return None,
    })
}

fn scope_to_pb(scope: Scope) -> pb::TokenScope {
    match scope {
        Scope::PublishNew => pb::TokenScope::PublishNew,
        Scope::PublishUpdate => pb::TokenScope::PublishUpdate,
        Scope::Yank => pb::TokenScope::Yank,
        Scope::Star => pb::TokenScope::Star,
    }
}

pub fn api_token(row: &ApiTokenRow) -> pb::ApiToken {
    pb::ApiToken {
        id: row.id.to_string(),
        username: row.username.clone(),
        name: row.name.clone(),
        scopes: row
            .scopes
            .iter()
            .filter_map(|s| Scope::from_db(s))
            .map(|s| scope_to_pb(s).into())
            .collect(),
        packages: row.packages.clone().unwrap_or_default(),
        expire_time: row.expires_at.map(timestamp),
        create_time: Some(timestamp(row.created_at)),
        revoked: row.revoked_at.is_some(),
    }
}

pub fn event(row: &EventRow) -> pb::WatchRegistryEventsResponse {
    let kind = match row.kind.as_str() {
        "published" => pb::EventKind::Published,
        "yanked" => pb::EventKind::Yanked,
        "unyanked" => pb::EventKind::Unyanked,
        "version_deleted" => pb::EventKind::VersionDeleted,
        "package_deleted" => pb::EventKind::PackageDeleted,
        "renamed" => pb::EventKind::Renamed,
        _ => pb::EventKind::Unspecified,
    };
    pb::WatchRegistryEventsResponse {
        seq: row.seq,
        kind: kind.into(),
        package_id: row.package.to_string(),
        package_name: row.name.clone(),
        version: row.version.clone(),
        old_name: row.old_name.clone(),
        create_time: Some(timestamp(row.created_at)),
    }
}
